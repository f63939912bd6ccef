//! Whole numbers in request bodies. JSON Schema's `integer` (what the documents
//! say) includes `7.0`, which serde refuses for an integer type; these accept any
//! JSON number with no fractional part that fits the target type. Use with
//! `#[serde(default, deserialize_with = "kai_http::whole::option")]`
//! (null = `None`) or `whole::double_option` (PATCH: absent, null, value).
use serde::Deserialize;
use serde::de::Error;

fn from_number<T: TryFrom<i64>, E: Error>(n: &serde_json::Number) -> Result<T, E> {
    let whole = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    });
    let Some(whole) = whole else {
        return Err(E::custom("must be a whole number"));
    };
    T::try_from(whole).map_err(|_| E::custom("is out of range"))
}

pub fn option<'de, T, D>(de: D) -> Result<Option<T>, D::Error>
where
    T: TryFrom<i64>,
    D: serde::Deserializer<'de>,
{
    Option::<serde_json::Number>::deserialize(de)?
        .map(|n| from_number(&n))
        .transpose()
}

pub fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: TryFrom<i64>,
    D: serde::Deserializer<'de>,
{
    option(de).map(Some)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Body {
        #[serde(default, deserialize_with = "super::option")]
        mood: Option<i16>,
    }

    #[test]
    fn whole_floats_count_and_fractions_do_not() {
        let mood = |json: &str| serde_json::from_str::<Body>(json).map(|b| b.mood);
        assert_eq!(mood(r#"{"mood": 4}"#).unwrap(), Some(4));
        assert_eq!(mood(r#"{"mood": 4.0}"#).unwrap(), Some(4));
        assert_eq!(mood(r#"{"mood": null}"#).unwrap(), None);
        assert_eq!(mood(r#"{}"#).unwrap(), None);
        assert!(mood(r#"{"mood": 4.5}"#).is_err());
        assert!(mood(r#"{"mood": 40000}"#).is_err());
        assert!(mood(r#"{"mood": "4"}"#).is_err());
    }
}
