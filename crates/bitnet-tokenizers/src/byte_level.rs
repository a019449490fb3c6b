//! GPT-2 byte-to-unicode mapping used by byte-level BPE vocabularies.
//!
//! Byte-level tokens are stored as strings in which every byte is replaced by a
//! printable character (space -> `Ġ`, newline -> `Ċ`, ...). The streaming decoder
//! needs the raw bytes of each token, which `tokenizers` keeps private, so the
//! table is rebuilt here. It is the fixed table from OpenAI's `bytes_to_unicode`.

use std::sync::OnceLock;

/// Highest code point the table produces: 256 + 67 remapped bytes - 1.
const MAX_CHAR: usize = 0x143;

fn char_to_byte_table() -> &'static [Option<u8>; MAX_CHAR + 1] {
    static TABLE: OnceLock<[Option<u8>; MAX_CHAR + 1]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [None; MAX_CHAR + 1];
        let mut next_remapped = 256usize;
        for b in 0u16..=255 {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                usize::from(b)
            } else {
                let c = next_remapped;
                next_remapped += 1;
                c
            };
            // `b` is at most 255 by the loop bound, so the narrowing is exact.
            table[c] = Some(b as u8);
        }
        table
    })
}

/// The byte a byte-level character stands for, if it is one of the 256 table characters.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    char_to_byte_table().get(c as usize).copied().flatten()
}

/// Appends the raw bytes of one token exactly as the `ByteLevel` decoder of
/// `tokenizers` does: if every character is a table character the token is
/// byte-level text and maps back to bytes; otherwise (added tokens such as
/// `<|eot_id|>` written with characters outside the table) its UTF-8 is used as is.
pub(crate) fn push_token_bytes(token: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in token.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_over_bytes() {
        let mut seen = [false; 256];
        for c in 0..=MAX_CHAR {
            if let Some(b) = char::from_u32(c as u32).and_then(char_to_byte) {
                assert!(!seen[usize::from(b)], "byte {b} mapped twice");
                seen[usize::from(b)] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn known_characters() {
        assert_eq!(char_to_byte('Ġ'), Some(b' '));
        assert_eq!(char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(char_to_byte('A'), Some(b'A'));
        assert_eq!(char_to_byte('中'), None);
        let mut out = Vec::new();
        push_token_bytes("Ġthe", &mut out);
        push_token_bytes("<|eot_id|>", &mut out);
        push_token_bytes("中", &mut out);
        assert_eq!(out, " the<|eot_id|>中".as_bytes());
    }
}
