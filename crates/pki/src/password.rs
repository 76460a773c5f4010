//! Hashing of device enrollment secrets.
//!
//! Argon2id with the crate's default parameters (m = 19 MiB, t = 2, p = 1,
//! the OWASP minimum), stored as a PHC string so the parameters travel
//! with the hash and can be raised later without breaking old entries.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, Salt, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};

use crate::PkiError;

/// Salt length (the PHC recommendation).
const SALT_LEN: usize = Salt::RECOMMENDED_LENGTH;

/// Hashes `password` with a fresh random salt into a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_password(password: &str) -> Result<String, PkiError> {
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| PkiError::Password("the system random generator failed".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PkiError::Password(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| PkiError::Password(e.to_string()))?;
    Ok(hash.to_string())
}

/// True if `password` matches `phc`. A PHC string that does not parse or is
/// not Argon2id is a mismatch: only hashes we made are expected here.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return false;
    }
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_password_verifies_wrong_one_does_not() {
        let phc = hash_password("correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("correct horsE", &phc));
        assert!(!verify_password("", &phc));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(
            hash_password("x").expect("hash"),
            hash_password("x").expect("hash")
        );
    }

    #[test]
    fn garbage_and_other_algorithms_do_not_verify() {
        assert!(!verify_password("x", ""));
        assert!(!verify_password("x", "not a phc string"));
        let argon2i = Argon2::new(
            argon2::Algorithm::Argon2i,
            argon2::Version::V0x13,
            argon2::Params::default(),
        )
        .hash_password(b"x", &SaltString::encode_b64(&[7u8; 16]).expect("salt"))
        .expect("hash")
        .to_string();
        assert!(!verify_password("x", &argon2i));
    }
}
