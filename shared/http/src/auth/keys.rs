//! Ed25519 key material for access tokens.
//!
//! Why asymmetric: with one shared HMAC secret, whoever compromises any pod can
//! mint tokens for every user on every service. Here only the service that issues tokens holds
//! the private key (`AUTH_SIGNING_KEY_FILE`, PKCS#8 PEM); every service holds
//! public keys only (`AUTH_VERIFYING_KEYS_FILE`, one or more `PUBLIC KEY` PEM
//! blocks). Each key is named by its `kid` — a hash of the public key, so nobody
//! has to keep names in sync — and a token carries the `kid` of the key that
//! signed it. Rotation: add the new public key everywhere, switch the signing key,
//! remove the old public key once its tokens have expired.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use sha2::{Digest, Sha256};

const PUBLIC_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PUBLIC_END: &str = "-----END PUBLIC KEY-----";

/// The `kid` of a public key: the first 8 bytes of its SHA-256, hex.
pub fn kid_of(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// The private key that signs tokens, with its `kid`.
#[derive(Clone)]
pub struct SigningMaterial {
    pub kid: String,
    pub key: EncodingKey,
}

impl fmt::Debug for SigningMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningMaterial {{ kid: {:?}, key: [redacted] }}",
            self.kid
        )
    }
}

/// The public keys tokens are verified with, by `kid`.
#[derive(Clone, Default)]
pub struct VerifyingKeys {
    keys: HashMap<String, DecodingKey>,
}

impl fmt::Debug for VerifyingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        write!(f, "VerifyingKeys {{ kids: {kids:?} }}")
    }
}

impl VerifyingKeys {
    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses a PKCS#8 PEM Ed25519 private key.
pub fn parse_signing_pem(pem: &str) -> Result<SigningMaterial, String> {
    let signing = SigningKey::from_pkcs8_pem(pem.trim())
        .map_err(|e| format!("not a PKCS#8 PEM Ed25519 private key ({e})"))?;
    let key = EncodingKey::from_ed_pem(pem.trim().as_bytes())
        .map_err(|e| format!("not a PKCS#8 PEM Ed25519 private key ({e})"))?;
    Ok(SigningMaterial {
        kid: kid_of(&signing.verifying_key()),
        key,
    })
}

/// Parses one or more `PUBLIC KEY` PEM blocks (Ed25519 SubjectPublicKeyInfo).
pub fn parse_verifying_pems(text: &str) -> Result<VerifyingKeys, String> {
    let mut keys = HashMap::new();
    let mut rest = text;
    while let Some(start) = rest.find(PUBLIC_BEGIN) {
        let Some(end) = rest[start..].find(PUBLIC_END) else {
            return Err("a PEM block has no END line".into());
        };
        let block = &rest[start..start + end + PUBLIC_END.len()];
        let public = VerifyingKey::from_public_key_pem(block)
            .map_err(|e| format!("key {}: not an Ed25519 public key ({e})", keys.len() + 1))?;
        let decoding = DecodingKey::from_ed_der(public.as_bytes());
        keys.insert(kid_of(&public), decoding);
        rest = &rest[start + end + PUBLIC_END.len()..];
    }
    if keys.is_empty() {
        return Err("no `-----BEGIN PUBLIC KEY-----` block found".into());
    }
    Ok(VerifyingKeys { keys })
}

/// A freshly generated key pair (tests, development, load tools).
pub struct KeyPair {
    pub kid: String,
    /// PKCS#8 PEM private key.
    pub private_pem: String,
    /// SubjectPublicKeyInfo PEM public key.
    pub public_pem: String,
}

impl KeyPair {
    pub fn generate() -> Self {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    /// A deterministic pair (test helpers: every test process shares one pair).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let private_pem = signing
            .to_pkcs8_pem(Default::default())
            .expect("an Ed25519 key encodes")
            .to_string();
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(Default::default())
            .expect("an Ed25519 key encodes");
        Self {
            kid: kid_of(&signing.verifying_key()),
            private_pem,
            public_pem,
        }
    }

    /// Writes `signing.pem` (mode 0600) and `verifying.pem` into `dir` and returns
    /// their paths.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let signing = dir.join("signing.pem");
        let verifying = dir.join("verifying.pem");
        // Written under a temporary name, then renamed: concurrent writers of the
        // same pair (parallel test processes) never expose a half-written file.
        let tmp = |name: &str| dir.join(format!(".{name}.{}.tmp", std::process::id()));
        write_private(&tmp("signing"), &self.private_pem)?;
        std::fs::rename(tmp("signing"), &signing)?;
        std::fs::write(tmp("verifying"), &self.public_pem)?;
        std::fs::rename(tmp("verifying"), &verifying)?;
        Ok((signing, verifying))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_parse_back_with_the_same_kid() {
        let pair = KeyPair::generate();
        assert_eq!(parse_signing_pem(&pair.private_pem).unwrap().kid, pair.kid);
        let other = KeyPair::generate();
        let both = format!("{}\n{}", pair.public_pem, other.public_pem);
        let keys = parse_verifying_pems(&both).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&pair.kid) && keys.contains(&other.kid));
    }

    #[test]
    fn garbage_and_private_keys_are_not_public_keys() {
        assert!(parse_verifying_pems("").is_err());
        assert!(parse_verifying_pems(&KeyPair::generate().private_pem).is_err());
        assert!(parse_signing_pem(&KeyPair::generate().public_pem).is_err());
    }
}
