//! Journal-like text of realistic size, generated (deterministically per seed)
//! from a small stock of sentences.

use rand::Rng;
use rand::seq::IndexedRandom;

const SENTENCES: &[&str] = &[
    "Woke up before the alarm today and lay there listening to the rain on the window.",
    "The meeting with my manager went better than I expected, though I still felt my shoulders tense when the deadline came up.",
    "I walked to the park after lunch and noticed the first leaves turning yellow along the path by the pond.",
    "My sister called in the evening; we talked for almost an hour about our parents and the holidays.",
    "I keep coming back to the feeling that I am always a step behind, even when the list is getting shorter.",
    "Tried the breathing exercise from last week: four seconds in, hold, six seconds out. It helped more than I thought it would.",
    "Slept badly again, woke at three and could not stop replaying the conversation from yesterday.",
    "Cooked a proper dinner for the first time in days, lentil soup and bread, and ate it slowly without my phone.",
    "There was a moment on the train when the sun came through the clouds and everything felt lighter for no reason.",
    "I said no to the extra project, and the guilt lasted about ten minutes before it turned into relief.",
    "Anxious most of the morning, mostly about money, even though nothing has actually changed since last month.",
    "Went for a run along the river; my legs were heavy but my head was clearer afterwards.",
    "Grateful today for coffee, for the neighbour who fixed my bike, and for the quiet hour after everyone went to bed.",
    "I noticed I was snapping at people when I was really just tired, and I want to catch that earlier next time.",
    "Read a few chapters of the novel before sleeping; it is slow but I like the way the author describes the sea.",
    "Therapy session today. We talked about perfectionism and where I learned that being busy means being worth something.",
    "The kids were loud and the house was a mess, and somehow it was still one of the better evenings this week.",
    "Felt lonely in the afternoon, so I texted an old friend, and we made plans for Saturday.",
    "Work was a blur of small tasks; none of them mattered much, but finishing them felt good anyway.",
    "I want to remember how calm I felt sitting on the balcony tonight, with the city humming somewhere below.",
];

const TITLES: &[&str] = &[
    "Morning pages",
    "A long day",
    "Small wins",
    "Rain again",
    "After therapy",
    "Sunday thoughts",
    "Tired but okay",
    "Gratitude list",
    "Before sleep",
    "On the train",
];

const TAGS: &[&str] = &[
    "work",
    "family",
    "sleep",
    "anxiety",
    "gratitude",
    "exercise",
    "friends",
    "health",
    "reading",
    "therapy",
];

/// Journal text between `min` and `max` characters (whole sentences).
pub fn content(rng: &mut impl Rng, min: usize, max: usize) -> String {
    let target = rng.random_range(min..=max);
    let mut s = String::with_capacity(target + 200);
    loop {
        let next = SENTENCES.choose(rng).expect("non-empty");
        if !s.is_empty() && s.len() + 1 + next.len() > max {
            break;
        }
        if !s.is_empty() {
            s.push(if rng.random_ratio(1, 5) { '\n' } else { ' ' });
        }
        s.push_str(next);
        if s.len() >= target {
            break;
        }
    }
    s
}

pub fn title(rng: &mut impl Rng) -> String {
    TITLES.choose(rng).expect("non-empty").to_string()
}

/// One to three distinct tags, comma-separated.
pub fn tags(rng: &mut impl Rng) -> Vec<String> {
    let n = rng.random_range(1..=3);
    TAGS.choose_multiple(rng, n)
        .map(|t| t.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn content_has_the_requested_size() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let c = content(&mut rng, 500, 1500);
            assert!((500..=1500).contains(&c.len()), "{}", c.len());
        }
    }
}
