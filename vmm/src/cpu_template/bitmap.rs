//! Firecracker-style bit patterns: "0b" followed by one of `0`, `1`, `x` per bit, MSB first.

/// Bits to force: where `mask` is set, the value's bit becomes the one in `bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitmap {
    pub mask: u64,
    pub bits: u64,
}

impl Bitmap {
    /// Parses a pattern of exactly `width` bit characters (after the "0b" prefix).
    pub fn parse(s: &str, width: usize) -> Result<Bitmap, String> {
        let body = s
            .strip_prefix("0b")
            .ok_or_else(|| format!("bitmap {s:?} must start with 0b"))?;
        if body.len() != width {
            return Err(format!(
                "bitmap {s:?} has {} bit characters, expected {width}",
                body.len()
            ));
        }
        let mut map = Bitmap { mask: 0, bits: 0 };
        for (i, c) in body.chars().enumerate() {
            let bit = 1u64 << (width - 1 - i);
            match c {
                '0' => map.mask |= bit,
                '1' => {
                    map.mask |= bit;
                    map.bits |= bit;
                }
                'x' | 'X' => {}
                other => return Err(format!("bitmap {s:?} has {other:?}; use 0, 1 or x")),
            }
        }
        Ok(map)
    }

    pub fn apply(&self, value: u64) -> u64 {
        (value & !self.mask) | (self.bits & self.mask)
    }
}
