//! How values reach a role that may not read them in clear.

use std::sync::Arc;

use arrow::array::{AsArray, StringArray};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shoal_catalog::Visibility;

/// Partly hides a text value: `+8613812345678` → `+86138****5678`.
pub fn mask(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 8 {
        return "****".to_string();
    }
    // Phones show their prefix and last four digits (`138****5678`); longer text shows at
    // most six leading characters.
    let keep_start = (chars.len() - 8).min(6);
    let start: String = chars[..keep_start].iter().collect();
    let end: String = chars[chars.len() - 4..].iter().collect();
    format!("{start}****{end}")
}

/// SHA-256 of the text, uppercase hex (the form ad platforms match on).
pub fn hash(text: &str) -> String {
    hash_hex(text).iter().map(|&b| char::from(b)).collect()
}

/// [`hash`] as 64 ASCII bytes, without allocating.
pub fn hash_hex(text: &str) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = [0u8; 64];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(digest.iter()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 15)];
    }
    hex
}

/// Rewrites `value` as `visibility` allows; nulls stay null.
pub fn apply(value: &mut Value, visibility: Visibility) {
    if value.is_null() {
        return;
    }
    let text = match &*value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    *value = match visibility {
        Visibility::Clear => return,
        Visibility::Masked => Value::String(mask(&text)),
        Visibility::Hashed => Value::String(hash(&text)),
        Visibility::Denied => Value::Null,
    };
}

/// Name of the SQL function that masks text as [`mask`] does.
pub const MASK_FUNCTION: &str = "shoal_mask";
/// Name of the SQL function that hashes text as [`hash`] does.
pub const HASH_FUNCTION: &str = "shoal_hash";

/// The SQL functions behind masked and hashed columns: text in, text out, nulls stay null.
pub fn udfs() -> [ScalarUDF; 2] {
    fn text_udf(name: &str, f: fn(&str) -> String) -> ScalarUDF {
        create_udf(
            name,
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(move |args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let input = arrays[0].as_string::<i32>();
                let out: StringArray = input.iter().map(|v| v.map(f)).collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }),
        )
    }
    [text_udf(MASK_FUNCTION, mask), text_udf(HASH_FUNCTION, hash)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_keep_their_prefix_and_last_four() {
        assert_eq!(mask("+8613812345678"), "+86138****5678");
        assert_eq!(mask("short"), "****");
        assert_eq!(mask("13812345678"), "138****5678");
        assert_eq!(
            hash("abc"),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
    }
}
