//! Delta deletion vectors: rows of a data file marked deleted without rewriting the file.
//!
//! A deletion vector is a set of row positions (a 64-bit roaring bitmap) in the
//! `RoaringBitmapArray` portable format. Stored vectors live in `deletion_vector_<uuid>.bin`
//! files at the table's root: a version byte, then for each vector its size (big-endian),
//! a magic number and the bitmap (little-endian), and a CRC-32 of those two (big-endian).
//! The log names a vector by storage type (`u`: a file named by its UUID, `i`: inline,
//! `p`: an absolute path), where it starts in its file, its size and its cardinality.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use roaring::RoaringTreemap;

use crate::error::{Error, Result};

/// The magic number opening every vector in the portable format.
const MAGIC: u32 = 1_681_511_377;

/// Where a data file's deletion vector is, as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeletionRef {
    /// `u`, `i` or `p`.
    pub storage_type: char,
    /// Prefix and encoded UUID (`u`), the encoded vector (`i`) or a path (`p`).
    pub path_or_inline: String,
    /// Where the vector starts in its file (`u`, `p`).
    pub offset: Option<i32>,
    /// Size of the vector in bytes.
    pub size: i32,
    /// Rows it marks deleted.
    pub cardinality: i64,
}

impl DeletionRef {
    /// The log's descriptor of this vector.
    pub(crate) fn descriptor(&self) -> deltalake::kernel::DeletionVectorDescriptor {
        use deltalake::kernel::StorageType;
        deltalake::kernel::DeletionVectorDescriptor {
            storage_type: match self.storage_type {
                'i' => StorageType::Inline,
                'p' => StorageType::AbsolutePath,
                _ => StorageType::UuidRelativePath,
            },
            path_or_inline_dv: self.path_or_inline.clone(),
            offset: self.offset,
            size_in_bytes: self.size,
            cardinality: self.cardinality,
        }
    }

    /// The reference the log's `descriptor` makes.
    pub(crate) fn of(descriptor: &deltalake::kernel::DeletionVectorDescriptor) -> DeletionRef {
        use deltalake::kernel::StorageType;
        DeletionRef {
            storage_type: match descriptor.storage_type {
                StorageType::Inline => 'i',
                StorageType::AbsolutePath => 'p',
                StorageType::UuidRelativePath => 'u',
            },
            path_or_inline: descriptor.path_or_inline_dv.clone(),
            offset: descriptor.offset,
            size: descriptor.size_in_bytes,
            cardinality: descriptor.cardinality,
        }
    }
}

fn invalid(table: &str, reason: impl Into<String>) -> Error {
    Error::InvalidData {
        table: table.to_string(),
        reason: reason.into(),
    }
}

/// Decodes a vector: the magic number, then the bitmap.
fn decode(table: &str, bytes: &[u8]) -> Result<RoaringTreemap> {
    let Some((magic, bitmap)) = bytes.split_first_chunk::<4>() else {
        return Err(invalid(
            table,
            "a deletion vector is shorter than its magic",
        ));
    };
    if u32::from_le_bytes(*magic) != MAGIC {
        return Err(invalid(
            table,
            "a deletion vector is not in the portable roaring format",
        ));
    }
    RoaringTreemap::deserialize_from(bitmap)
        .map_err(|e| invalid(table, format!("a deletion vector does not decode: {e}")))
}

/// Reads the deletion vector `dv` of a data file of `table`, whose files `store` holds
/// (paths from the table's root).
pub(crate) async fn load(
    table: &str,
    store: &dyn ObjectStore,
    dv: &DeletionRef,
) -> Result<RoaringTreemap> {
    let path = match dv.storage_type {
        'i' => {
            let bytes = z85::decode(&dv.path_or_inline)
                .map_err(|e| invalid(table, format!("an inline deletion vector: {e}")))?;
            return decode(table, &bytes);
        }
        'u' => {
            let encoded = dv.path_or_inline.as_str();
            let split = encoded.len().checked_sub(20).ok_or_else(|| {
                invalid(
                    table,
                    format!("deletion vector path '{encoded}' is too short"),
                )
            })?;
            let (prefix, id) = encoded.split_at(split);
            let id = z85::decode(id)
                .ok()
                .and_then(|b| uuid::Uuid::from_slice(&b).ok())
                .ok_or_else(|| {
                    invalid(
                        table,
                        format!("deletion vector path '{encoded}' names no UUID"),
                    )
                })?;
            let name = format!("deletion_vector_{id}.bin");
            if prefix.is_empty() {
                Path::from(name)
            } else {
                Path::from(format!("{prefix}/{name}"))
            }
        }
        other => {
            return Err(invalid(
                table,
                format!(
                    "deletion vectors stored as '{other}' are read only through Delta's reader"
                ),
            ));
        }
    };
    let offset = u64::try_from(dv.offset.unwrap_or(1))
        .map_err(|_| invalid(table, "a deletion vector has a negative offset"))?;
    let size = u64::try_from(dv.size)
        .map_err(|_| invalid(table, "a deletion vector has a negative size"))?;
    let bytes: Bytes = store
        .get_range(&path, offset..offset + 4 + size + 4)
        .await
        .map_err(|e| Error::Internal(format!("{table}: reading deletion vector {path}: {e}")))?;
    if bytes.len() as u64 != 4 + size + 4 {
        return Err(invalid(
            table,
            format!("deletion vector {path} ends before the log says"),
        ));
    }
    let stored = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if u64::from(stored) != size {
        return Err(invalid(
            table,
            format!("deletion vector {path} holds {stored} bytes, the log says {size}"),
        ));
    }
    let data = &bytes[4..4 + size as usize];
    let crc = &bytes[4 + size as usize..];
    if crc32fast::hash(data).to_be_bytes() != crc {
        return Err(invalid(
            table,
            format!("deletion vector {path} fails its checksum"),
        ));
    }
    decode(table, data)
}

/// One file holding `vectors`, and the reference of each (their file named by `id`).
pub(crate) fn encode(
    table: &str,
    id: uuid::Uuid,
    vectors: &[RoaringTreemap],
) -> Result<(Vec<u8>, Vec<DeletionRef>)> {
    let mut out = vec![1u8];
    let mut refs = Vec::with_capacity(vectors.len());
    let path = z85::encode(id.as_bytes());
    for vector in vectors {
        let mut data = MAGIC.to_le_bytes().to_vec();
        vector
            .serialize_into(&mut data)
            .map_err(|e| Error::Internal(format!("{table}: encoding a deletion vector: {e}")))?;
        let size = i32::try_from(data.len())
            .map_err(|_| invalid(table, "a deletion vector exceeds 2 GiB"))?;
        let offset = i32::try_from(out.len())
            .map_err(|_| invalid(table, "a deletion vector file exceeds 2 GiB"))?;
        out.extend_from_slice(&(size as u32).to_be_bytes());
        out.extend_from_slice(&data);
        out.extend_from_slice(&crc32fast::hash(&data).to_be_bytes());
        refs.push(DeletionRef {
            storage_type: 'u',
            path_or_inline: path.clone(),
            offset: Some(offset),
            size,
            cardinality: vector.len() as i64,
        });
    }
    Ok((out, refs))
}

/// The name of the file of vectors `id` at the table's root.
pub(crate) fn file_name(id: uuid::Uuid) -> String {
    format!("deletion_vector_{id}.bin")
}

/// The rows of a file of `rows` rows that `deleted` leaves, as a Parquet row selection.
pub(crate) fn selection(
    rows: usize,
    deleted: &RoaringTreemap,
) -> deltalake::parquet::arrow::arrow_reader::RowSelection {
    use deltalake::parquet::arrow::arrow_reader::RowSelector;
    let mut selectors = Vec::new();
    let mut at = 0usize;
    for position in deleted.iter() {
        let position = position as usize;
        if position >= rows {
            break;
        }
        if position > at {
            selectors.push(RowSelector::select(position - at));
        }
        selectors.push(RowSelector::skip(1));
        at = position + 1;
    }
    if at < rows {
        selectors.push(RowSelector::select(rows - at));
    }
    selectors.into()
}

/// Which of a file's first `rows` rows `deleted` leaves, as a filter.
pub(crate) fn live_rows(rows: usize, deleted: &RoaringTreemap) -> arrow::array::BooleanArray {
    let mut live = arrow::array::BooleanBufferBuilder::new(rows);
    live.append_n(rows, true);
    for position in deleted.iter() {
        let position = position as usize;
        if position >= rows {
            break;
        }
        live.set_bit(position, false);
    }
    arrow::array::BooleanArray::new(live.finish(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_through_their_file() {
        let a: RoaringTreemap = [0u64, 5, 6, 1 << 33].into_iter().collect();
        let b: RoaringTreemap = (100u64..200).collect();
        let id = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let (file, refs) = encode("t", id, &[a.clone(), b.clone()]).expect("encoded");
        assert_eq!(file[0], 1);
        assert_eq!(refs[0].offset, Some(1));
        assert_eq!(refs[1].cardinality, 100);
        assert_eq!(refs[0].path_or_inline.len(), 20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let store = object_store::memory::InMemory::new();
        rt.block_on(async {
            ObjectStoreExt::put(&store, &Path::from(file_name(id)), file.into())
                .await
                .expect("put");
            assert_eq!(load("t", &store, &refs[0]).await.expect("a"), a);
            assert_eq!(load("t", &store, &refs[1]).await.expect("b"), b);
            let mut wrong = refs[1].clone();
            wrong.size += 1;
            assert!(load("t", &store, &wrong).await.is_err());
        });
    }

    #[test]
    fn selections_skip_exactly_the_deleted_rows() {
        let deleted: RoaringTreemap = [0u64, 3, 4, 9].into_iter().collect();
        let kept: Vec<usize> = {
            let selection = selection(10, &deleted);
            let mut at = 0;
            let mut kept = Vec::new();
            for s in selection.iter() {
                if !s.skip {
                    kept.extend(at..at + s.row_count);
                }
                at += s.row_count;
            }
            kept
        };
        assert_eq!(kept, vec![1, 2, 5, 6, 7, 8]);
        let live = live_rows(10, &deleted);
        let kept: Vec<usize> = (0..10).filter(|i| live.value(*i)).collect();
        assert_eq!(kept, vec![1, 2, 5, 6, 7, 8]);
        assert_eq!(arrow::array::Array::null_count(&live), 0);
    }
}
