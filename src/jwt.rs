//! APNs provider tokens: ES256 JSON Web Tokens with header `{"alg":"ES256","kid"}`
//! and claims `{"iss": team, "iat": seconds}`. Signing is for the worker,
//! verification for the simulator; both sides live here so they cannot drift.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{0}: not a PEM private key (expected an Apple .p8 file, PKCS#8 \"BEGIN PRIVATE KEY\")"
    )]
    NotPem(String),
    #[error("{0}: not a P-256 (ES256) key")]
    NotP256(String),
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
}

/// A P-256 private key that signs provider tokens. Not `Debug`-printable.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Reads an Apple `.p8` file (PKCS#8 PEM).
    pub fn from_pem(label: &str, pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|_| KeyError::NotPem(label.to_owned()))?;
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|_| KeyError::NotP256(label.to_owned()))?;
        Ok(SigningKey { pair, rng })
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let label = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| KeyError::Read(label.clone(), e))?;
        SigningKey::from_pem(&label, &pem)
    }

    /// The uncompressed public point, what the simulator verifies against.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs a provider token issued at `iat` (unix seconds).
    pub fn sign(&self, key_id: &str, team_id: &str, iat: u64) -> String {
        let header =
            URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "ES256", "kid": key_id}).to_string());
        let claims =
            URL_SAFE_NO_PAD.encode(serde_json::json!({"iss": team_id, "iat": iat}).to_string());
        let input = format!("{header}.{claims}");
        // ring signs with a fresh random nonce; it fails only if the OS RNG fails,
        // and then no token can be made at all.
        let signature = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .expect("the system random generator failed while signing a provider token");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    pub kid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub iat: u64,
}

/// Why a token does not verify. The simulator maps these to APNs reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
}

/// Splits a token and reads its header and claims without checking the signature.
pub fn decode_unverified(token: &str) -> Result<(Header, Claims), VerifyError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let read = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| VerifyError::Malformed)
    };
    let header: Header = serde_json::from_slice(&read(h)?).map_err(|_| VerifyError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&read(c)?).map_err(|_| VerifyError::Malformed)?;
    if header.alg != "ES256" {
        return Err(VerifyError::Malformed);
    }
    Ok((header, claims))
}

/// Checks the ES256 signature of `token` against an uncompressed P-256 public point.
pub fn verify_signature(token: &str, public_key: &[u8]) -> Result<(), VerifyError> {
    let (input, signature) = token.rsplit_once('.').ok_or(VerifyError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| VerifyError::Malformed)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)
}

/// Reads a P-256 public key for verification from PEM: either a private key
/// (`BEGIN PRIVATE KEY`, the `.p8` itself) or a `BEGIN PUBLIC KEY` (SPKI).
pub fn public_key_from_pem(label: &str, pem: &[u8]) -> Result<Vec<u8>, KeyError> {
    if let Ok(key) = SigningKey::from_pem(label, pem) {
        return Ok(key.public_key());
    }
    let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map_err(|_| KeyError::NotPem(label.to_owned()))?;
    // A P-256 SubjectPublicKeyInfo is a fixed 26-byte prefix and the 65-byte point.
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    match der.as_ref().split_at_checked(26) {
        Some((prefix, point)) if prefix == P256_SPKI_PREFIX && point.len() == 65 => {
            Ok(point.to_vec())
        }
        _ => Err(KeyError::NotP256(label.to_owned())),
    }
}

/// Makes a new P-256 key as an Apple-style `.p8` PEM, for the simulator and tests.
pub fn generate_p8() -> String {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("the system random generator failed while generating a key");
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec());
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.secret_pkcs8_der());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let key = SigningKey::from_pem("k", generate_p8().as_bytes()).unwrap();
        let token = key.sign("KEY123", "TEAM456", 1_700_000_000);
        let (header, claims) = decode_unverified(&token).unwrap();
        assert_eq!(header.kid, "KEY123");
        assert_eq!(
            claims,
            Claims {
                iss: "TEAM456".into(),
                iat: 1_700_000_000
            }
        );
        assert_eq!(verify_signature(&token, &key.public_key()), Ok(()));

        let other = SigningKey::from_pem("k", generate_p8().as_bytes()).unwrap();
        assert_eq!(
            verify_signature(&token, &other.public_key()),
            Err(VerifyError::BadSignature)
        );
        let tampered = token.replacen('.', ".e30", 1);
        assert!(verify_signature(&tampered, &key.public_key()).is_err());
        assert_eq!(decode_unverified("a.b"), Err(VerifyError::Malformed));
    }

    #[test]
    fn public_key_from_either_pem() {
        let pem = generate_p8();
        let key = SigningKey::from_pem("k", pem.as_bytes()).unwrap();
        assert_eq!(
            public_key_from_pem("k", pem.as_bytes()).unwrap(),
            key.public_key()
        );
        assert!(matches!(
            public_key_from_pem("k", b"nope"),
            Err(KeyError::NotPem(_))
        ));
        assert!(format!("{key:?}").contains("***"));
    }
}
