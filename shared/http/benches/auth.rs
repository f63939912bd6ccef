//! What one authenticated request costs in token verification: the HS256 check
//! every request paid before (the reference), an EdDSA (Ed25519) verification
//! (a cache miss), and the verified-token cache hit (SHA-256 of the token + moka
//! lookup + revocation checks) that most requests now pay.
//!
//! `cargo bench -p kai-shared --bench auth`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kai_http::auth::Authenticator;
use kai_http::auth::keys::{KeyPair, parse_signing_pem, parse_verifying_pems};
use uuid::Uuid;

fn verification(c: &mut Criterion) {
    let pair = KeyPair::generate();
    let auth = Authenticator::new(
        Some(parse_signing_pem(&pair.private_pem).unwrap()),
        parse_verifying_pems(&pair.public_pem).unwrap(),
        Duration::from_secs(3600),
    );
    let (token, claims) = auth.mint(Uuid::new_v4(), Uuid::now_v7()).unwrap();

    // Before: HS256 over the same claims.
    let secret = b"bench-secret-bench-secret-bench-secret";
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["kai"]);
    validation.set_audience(&["kai-api"]);
    let hs_key = DecodingKey::from_secret(secret);
    c.bench_function("before: HS256 verify (every request)", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<kai_http::auth::Claims>(&hs, &hs_key, &validation).unwrap()
        })
    });

    // After, a miss: the EdDSA decode the authenticator runs for a token it has
    // not verified before (header, signature, claims).
    let ed_key = DecodingKey::from_ed_pem(pair.public_pem.as_bytes()).unwrap();
    let mut ed_validation = Validation::new(Algorithm::EdDSA);
    ed_validation.set_issuer(&["kai"]);
    ed_validation.set_audience(&["kai-api"]);
    c.bench_function(
        "after, miss: EdDSA verify (first request of a token)",
        |b| {
            b.iter(|| {
                jsonwebtoken::decode::<kai_http::auth::Claims>(&token, &ed_key, &ed_validation)
                    .unwrap()
            })
        },
    );

    auth.verify(&token).unwrap();
    c.bench_function(
        "after, hit: verified-token cache (every later request)",
        |b| b.iter(|| auth.verify(&token).unwrap()),
    );
}

/// Rendering a validation problem+json body.
fn problem_json_render(c: &mut Criterion) {
    use kai_http::{ApiError, FieldError};
    c.bench_function("problem_json_render", |b| {
        b.iter(|| {
            let e = ApiError::validation(vec![FieldError::new("mood", "must be between 1 and 10")]);
            std::hint::black_box(serde_json::to_vec(&e.problem()).unwrap())
        })
    });
}

criterion_group!(benches, verification, problem_json_render);
criterion_main!(benches);
