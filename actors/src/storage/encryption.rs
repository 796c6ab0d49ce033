//! Artefacts encrypted to the customer's public key before they leave the node, in the `age`
//! format (age-encryption.org/v1, X25519 recipients), with the `age` crate — no cryptography of
//! our own. A file is encrypted as a stream (bounded memory) into `<file>.age`, written beside
//! its final name and renamed, so an upload resumed after a crash reads the same ciphertext
//! again. The recorder never holds a private key: what it stores, and serves through signed
//! URLs, is ciphertext, decrypted by the customer with the standard `age` CLI.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What encrypted object keys and files end with.
pub const SUFFIX: &str = ".age";

pub struct Encryption {
    recipients: Vec<age::x25519::Recipient>,
    /// `recording.json` too (off: the manifest stays readable, it holds no media).
    pub encrypt_manifest: bool,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encryption({} recipient(s), manifest: {})",
            self.recipients.len(),
            self.encrypt_manifest
        )
    }
}

impl Encryption {
    /// From `age1...` public keys; an error names the one that is not one.
    pub fn new(public_keys: &[String], encrypt_manifest: bool) -> Result<Self, String> {
        if public_keys.is_empty() {
            return Err("at least one public key is needed".into());
        }
        let recipients = public_keys
            .iter()
            .map(|key| {
                age::x25519::Recipient::from_str(key.trim())
                    .map_err(|e| format!("{key:?} is not an age public key (age1...): {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            recipients,
            encrypt_manifest,
        })
    }

    fn encryptor(&self) -> std::io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| std::io::Error::other(format!("age: {e}")))
    }

    /// Encrypts `reader` into `writer`, a chunk at a time.
    pub fn encrypt(&self, reader: &mut dyn Read, writer: &mut dyn Write) -> std::io::Result<u64> {
        let mut sealed = self.encryptor()?.wrap_output(writer)?;
        let n = std::io::copy(reader, &mut sealed)?;
        sealed.finish()?;
        Ok(n)
    }

    pub fn encrypt_bytes(&self, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len() + 256);
        self.encrypt(&mut &bytes[..], &mut out)?;
        Ok(out)
    }

    /// The ciphertext of `src` as a file beside it (`<src>.age`), made once: a file already
    /// there is complete (renamed into place only when written whole), and is what an upload
    /// resumed after a crash must read again. Blocking.
    pub fn encrypted_file(&self, src: &Path) -> std::io::Result<PathBuf> {
        let dest = encrypted_path(src);
        if dest.is_file() {
            return Ok(dest);
        }
        let partial = dest.with_extension("age.part");
        let mut input = std::io::BufReader::new(std::fs::File::open(src)?);
        let mut output = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        self.encrypt(&mut input, &mut output)?;
        output.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, &dest)?;
        Ok(dest)
    }
}

/// `<path>.age`.
pub fn encrypted_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encrypted_decrypts_with_the_private_key_only() {
        let identity = age::x25519::Identity::generate();
        let public = identity.to_public().to_string();
        let encryption = Encryption::new(&[public], false).unwrap();
        let sealed = encryption.encrypt_bytes(b"card 4111").unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"), "{sealed:?}");
        assert!(!sealed.windows(4).any(|w| w == b"4111"), "plaintext leaked");
        let decryptor = age::Decryptor::new(&sealed[..]).unwrap();
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .unwrap();
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain).unwrap();
        assert_eq!(plain, b"card 4111");
    }

    #[test]
    fn a_file_is_encrypted_once_beside_itself() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("t.webm");
        std::fs::write(&src, vec![7u8; 200_000]).unwrap();
        let identity = age::x25519::Identity::generate();
        let encryption = Encryption::new(&[identity.to_public().to_string()], false).unwrap();
        let sealed = encryption.encrypted_file(&src).unwrap();
        assert_eq!(sealed, dir.path().join("t.webm.age"));
        let first = std::fs::read(&sealed).unwrap();
        // Made once: a resumed upload reads the same ciphertext.
        assert_eq!(std::fs::read(encryption.encrypted_file(&src).unwrap()).unwrap(), first);
        assert!(Encryption::new(&["nope".into()], false).is_err());
    }
}
