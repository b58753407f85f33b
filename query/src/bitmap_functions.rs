//! Roaring bitmap functions registered in every session.
//!
//! Bitmaps travel as `Binary` values in the portable roaring serialisation (readable by
//! CRoaring, pyroaring and Java's RoaringBitmap), so SQL can pass them between functions,
//! store them and hand them to other tools.
//!
//! - `rb_build(user_id)`: aggregate, the bitmap of the ids in a group (mergeable: partial
//!   bitmaps from partitions or nodes are OR-ed).
//! - `rb_and(a, b)`, `rb_or(a, b)`, `rb_andnot(a, b)`, `rb_xor(a, b)`: set algebra.
//! - `rb_cardinality(bitmap)`: number of members.
//! - `rb_contains(bitmap, user_id)`: membership test.
//! - `audience(name)`: the current version of a stored audience pack.
//!
//! `rb_contains(audience('name'), user_id)` is planned as `rb_contains_audience('name',
//! user_id)`, which tests ids against the loaded pack directly: planning never copies the
//! pack's bytes into the plan (where every name DataFusion derives from an expression would
//! print them) and no batch serialises or compares them.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Int64Array,
    Int64Builder,
};
use arrow::buffer::{BooleanBuffer, Buffer};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Expr, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;
use roaring::RoaringBitmap;

/// Serialises a bitmap in the portable format.
pub fn to_bytes(bitmap: &RoaringBitmap) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(bitmap.serialized_size());
    // Writing into a Vec cannot fail.
    let _ = bitmap.serialize_into(&mut bytes);
    bytes
}

/// Reads a bitmap in the portable format.
pub fn from_bytes(bytes: &[u8]) -> Result<RoaringBitmap> {
    RoaringBitmap::deserialize_from(bytes).map_err(|e| {
        datafusion::error::DataFusionError::Execution(format!(
            "not a roaring bitmap ({} bytes): {e}",
            bytes.len()
        ))
    })
}

/// The audience bitmaps a session has loaded, by name.
pub type AudienceBitmaps = Arc<Mutex<HashMap<String, Arc<RoaringBitmap>>>>;

/// Registers every bitmap function in `ctx`; `audience(name)` reads from `audiences`.
pub fn register(ctx: &SessionContext, audiences: AudienceBitmaps) {
    ctx.register_udaf(AggregateUDF::from(BuildBitmap::new()));
    for op in [SetOp::And, SetOp::Or, SetOp::AndNot, SetOp::Xor] {
        ctx.register_udf(ScalarUDF::from(SetFunction::new(op)));
    }
    ctx.register_udf(ScalarUDF::from(Cardinality::new()));
    let member = Arc::new(ScalarUDF::from(AudienceContains {
        signature: Signature::exact(vec![DataType::Utf8, DataType::Int64], Volatility::Immutable),
        loaded: audiences.clone(),
        flat: FlatCache::default(),
    }));
    ctx.register_udf(member.as_ref().clone());
    ctx.register_udf(ScalarUDF::from(Contains::new(member)));
    // Volatile, so planning does not fold a pack into a literal before `rb_contains` can
    // name it instead (see the module's notes).
    ctx.register_udf(ScalarUDF::from(Audience {
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Volatile),
        loaded: audiences,
    }));
}

fn user_id_types() -> Vec<DataType> {
    vec![DataType::Int64]
}

/// A user id as a bitmap member: ids are dense u32 stored as Delta longs.
fn member(value: i64) -> Result<u32> {
    u32::try_from(value).or_else(|_| exec_err!("{value} is not a user id (0 to 4294967295)"))
}

/// Decodes bitmaps of one argument, row by row, reusing the decoding of a repeated scalar.
enum Bitmaps<'a> {
    One(Option<Arc<RoaringBitmap>>),
    Many(&'a BinaryArray),
}

impl<'a> Bitmaps<'a> {
    fn new(value: &'a ColumnarValue, cache: &BitmapCache) -> Result<Bitmaps<'a>> {
        Ok(match value {
            ColumnarValue::Scalar(
                ScalarValue::Binary(b) | ScalarValue::LargeBinary(b) | ScalarValue::BinaryView(b),
            ) => Bitmaps::One(b.as_deref().map(|b| cache.get(b)).transpose()?),
            ColumnarValue::Scalar(ScalarValue::Null) => Bitmaps::One(None),
            ColumnarValue::Array(array) => match array.as_binary_opt::<i32>() {
                Some(binary) => Bitmaps::Many(binary),
                None => return exec_err!("expected a bitmap (binary), got {}", array.data_type()),
            },
            ColumnarValue::Scalar(other) => {
                return exec_err!("expected a bitmap (binary), got {}", other.data_type());
            }
        })
    }

    fn get(&self, row: usize) -> Result<Option<Arc<RoaringBitmap>>> {
        match self {
            Bitmaps::One(b) => Ok(b.clone()),
            Bitmaps::Many(array) if array.is_null(row) => Ok(None),
            Bitmaps::Many(array) => Ok(Some(Arc::new(from_bytes(array.value(row))?))),
        }
    }
}

/// The last scalar bitmap decoded: a constant bitmap (an audience, a literal) is decoded once
/// per query instead of once per batch.
#[derive(Debug, Default)]
struct BitmapCache(Mutex<Option<(Vec<u8>, Arc<RoaringBitmap>)>>);

impl BitmapCache {
    fn get(&self, bytes: &[u8]) -> Result<Arc<RoaringBitmap>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, bitmap)) = slot.as_ref()
            && cached.as_slice() == bytes
        {
            return Ok(bitmap.clone());
        }
        let bitmap = Arc::new(from_bytes(bytes)?);
        *slot = Some((bytes.to_vec(), bitmap.clone()));
        Ok(bitmap)
    }
}

fn rows(args: &ScalarFunctionArgs) -> usize {
    args.number_rows
}

fn all_scalar(args: &ScalarFunctionArgs) -> bool {
    args.args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)))
}

/// Returns a one-row result as a scalar when every input was a scalar.
fn shape(array: ArrayRef, scalar: bool) -> Result<ColumnarValue> {
    if scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SetOp {
    And,
    Or,
    AndNot,
    Xor,
}

#[derive(Debug)]
struct SetFunction {
    op: SetOp,
    name: &'static str,
    signature: Signature,
    left: BitmapCache,
    right: BitmapCache,
}

impl SetFunction {
    fn new(op: SetOp) -> Self {
        let name = match op {
            SetOp::And => "rb_and",
            SetOp::Or => "rb_or",
            SetOp::AndNot => "rb_andnot",
            SetOp::Xor => "rb_xor",
        };
        SetFunction {
            op,
            name,
            signature: Signature::exact(
                vec![DataType::Binary, DataType::Binary],
                Volatility::Immutable,
            ),
            left: BitmapCache::default(),
            right: BitmapCache::default(),
        }
    }
}

impl PartialEq for SetFunction {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op
    }
}
impl Eq for SetFunction {}
impl Hash for SetFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.op.hash(state);
    }
}

impl ScalarUDFImpl for SetFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = all_scalar(&args);
        let n = if scalar { 1 } else { rows(&args) };
        let left = Bitmaps::new(&args.args[0], &self.left)?;
        let right = Bitmaps::new(&args.args[1], &self.right)?;
        let mut out = BinaryBuilder::new();
        for row in 0..n {
            match (left.get(row)?, right.get(row)?) {
                (Some(a), Some(b)) => {
                    let result = match self.op {
                        SetOp::And => a.as_ref() & b.as_ref(),
                        SetOp::Or => a.as_ref() | b.as_ref(),
                        SetOp::AndNot => a.as_ref() - b.as_ref(),
                        SetOp::Xor => a.as_ref() ^ b.as_ref(),
                    };
                    out.append_value(to_bytes(&result));
                }
                _ => out.append_null(),
            }
        }
        shape(Arc::new(out.finish()), scalar)
    }
}

#[derive(Debug)]
struct Cardinality {
    signature: Signature,
    cache: BitmapCache,
}

impl Cardinality {
    fn new() -> Self {
        Cardinality {
            signature: Signature::exact(vec![DataType::Binary], Volatility::Immutable),
            cache: BitmapCache::default(),
        }
    }
}

impl PartialEq for Cardinality {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Cardinality {}
impl Hash for Cardinality {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "rb_cardinality".hash(state);
    }
}

impl ScalarUDFImpl for Cardinality {
    fn name(&self) -> &str {
        "rb_cardinality"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = all_scalar(&args);
        let n = if scalar { 1 } else { rows(&args) };
        let bitmaps = Bitmaps::new(&args.args[0], &self.cache)?;
        let mut out = Int64Builder::with_capacity(n);
        for row in 0..n {
            out.append_option(bitmaps.get(row)?.map(|b| b.len() as i64));
        }
        shape(Arc::new(out.finish()), scalar)
    }
}

#[derive(Debug)]
struct Contains {
    signature: Signature,
    cache: BitmapCache,
    flat: FlatCache,
    /// `rb_contains_audience`, what a test against a named pack is planned as.
    member: Arc<ScalarUDF>,
}

/// Ids below this have a flat bit set (at most 16 MiB) for membership tests.
const FLAT_IDS: u32 = 1 << 27;

/// A flat bit set of the last constant bitmap tested against (one bit per id below its
/// largest member): one memory read per test, where a roaring lookup searches containers.
/// Built once per query, when the bitmap's ids are all below [`FLAT_IDS`].
#[derive(Debug, Default)]
struct FlatCache(Mutex<Option<Flat>>);

/// A bitmap with its flat bit set.
type Flat = (Arc<RoaringBitmap>, Arc<Vec<u64>>);

impl FlatCache {
    fn get(&self, bitmap: &Arc<RoaringBitmap>) -> Option<Arc<Vec<u64>>> {
        let max = bitmap.max()?;
        if max >= FLAT_IDS {
            return None;
        }
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, words)) = slot.as_ref()
            && Arc::ptr_eq(cached, bitmap)
        {
            return Some(words.clone());
        }
        let mut words = vec![0u64; max as usize / 64 + 1];
        for id in bitmap.iter() {
            words[id as usize / 64] |= 1 << (id % 64);
        }
        let words = Arc::new(words);
        *slot = Some((bitmap.clone(), words.clone()));
        Some(words)
    }
}

/// Whether each id is a member: nulls stay null, ids that are no user id are not members.
fn memberships(ids: &Int64Array, bitmap: &RoaringBitmap, flat: Option<&[u64]>) -> BooleanArray {
    let values = ids.values();
    let bits = match flat {
        // 64 ids per output word, in a loop without bounds checks on the ids.
        Some(words) => {
            let mut packed = Vec::with_capacity(values.len().div_ceil(64));
            for chunk in values.chunks(64) {
                let mut bits = 0u64;
                for (k, id) in chunk.iter().enumerate() {
                    let id = *id as u64;
                    let word = words.get((id / 64) as usize).copied().unwrap_or(0);
                    bits |= ((word >> (id % 64)) & 1) << k;
                }
                packed.push(bits);
            }
            BooleanBuffer::new(Buffer::from_vec(packed), 0, values.len())
        }
        None => BooleanBuffer::collect_bool(values.len(), |i| {
            u32::try_from(values[i]).is_ok_and(|u| bitmap.contains(u))
        }),
    };
    BooleanArray::new(bits, ids.nulls().cloned())
}

impl Contains {
    fn new(member: Arc<ScalarUDF>) -> Self {
        let mut signatures = Vec::new();
        for id in user_id_types() {
            signatures.push(TypeSignature::Exact(vec![DataType::Binary, id]));
        }
        Contains {
            signature: Signature::one_of(signatures, Volatility::Immutable),
            cache: BitmapCache::default(),
            flat: FlatCache::default(),
            member,
        }
    }
}

impl PartialEq for Contains {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Contains {}
impl Hash for Contains {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "rb_contains".hash(state);
    }
}

impl ScalarUDFImpl for Contains {
    fn name(&self) -> &str {
        "rb_contains"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return plan_err!("rb_contains(bitmap, user_id) takes two arguments");
        }
        Ok(vec![DataType::Binary, DataType::Int64])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn simplify(&self, args: Vec<Expr>, _: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if let [Expr::ScalarFunction(pack), id] = args.as_slice()
            && pack.func.name() == crate::compile::AUDIENCE_FUNCTION
            && let [name @ Expr::Literal(ScalarValue::Utf8(Some(_)), _)] = pack.args.as_slice()
        {
            return Ok(ExprSimplifyResult::Simplified(
                self.member.call(vec![name.clone(), id.clone()]),
            ));
        }
        Ok(ExprSimplifyResult::Original(args))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = all_scalar(&args);
        let n = if scalar { 1 } else { rows(&args) };
        let bitmaps = Bitmaps::new(&args.args[0], &self.cache)?;
        let ids = args.args[1].to_array(n)?;
        let ids = arrow::compute::cast(&ids, &DataType::Int64)?;
        let ids = ids.as_primitive::<Int64Type>();
        if let Bitmaps::One(one) = &bitmaps {
            // The common case (`rb_contains(audience('vip'), user_id)`): one bitmap, many ids.
            let answer = match one {
                None => BooleanArray::new_null(n),
                Some(bitmap) => {
                    let flat = self.flat.get(bitmap);
                    memberships(ids, bitmap, flat.as_deref().map(Vec::as_slice))
                }
            };
            return shape(Arc::new(answer), scalar);
        }
        let mut out = BooleanBuilder::with_capacity(n);
        for row in 0..n {
            match (bitmaps.get(row)?, ids.is_valid(row)) {
                (Some(b), true) => {
                    out.append_value(u32::try_from(ids.value(row)).is_ok_and(|u| b.contains(u)))
                }
                _ => out.append_null(),
            }
        }
        shape(Arc::new(out.finish()), scalar)
    }
}

/// `rb_contains_audience(name, user_id)`: whether each id is a member of the pack loaded
/// as `name`.
#[derive(Debug)]
struct AudienceContains {
    signature: Signature,
    loaded: AudienceBitmaps,
    flat: FlatCache,
}

impl PartialEq for AudienceContains {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.loaded, &other.loaded)
    }
}
impl Eq for AudienceContains {}
impl Hash for AudienceContains {
    fn hash<H: Hasher>(&self, state: &mut H) {
        AUDIENCE_CONTAINS.hash(state);
    }
}

/// The name `rb_contains(audience(..), ..)` is planned under.
pub(crate) const AUDIENCE_CONTAINS: &str = "rb_contains_audience";

impl ScalarUDFImpl for AudienceContains {
    fn name(&self) -> &str {
        AUDIENCE_CONTAINS
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))) => name.clone(),
            _ => return exec_err!("{AUDIENCE_CONTAINS}() takes a pack name as a string literal"),
        };
        let scalar = all_scalar(&args);
        let n = if scalar { 1 } else { rows(&args) };
        let bitmap = {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            match loaded.get(&name) {
                Some(bitmap) => bitmap.clone(),
                None => return exec_err!("unknown audience '{name}'"),
            }
        };
        let ids = args.args[1].to_array(n)?;
        let ids = arrow::compute::cast(&ids, &DataType::Int64)?;
        let flat = self.flat.get(&bitmap);
        let answer = memberships(
            ids.as_primitive::<Int64Type>(),
            &bitmap,
            flat.as_deref().map(Vec::as_slice),
        );
        shape(Arc::new(answer), scalar)
    }
}

/// `audience(name)`: the bitmap of a pack's current version, loaded by the session before
/// the query runs.
#[derive(Debug)]
struct Audience {
    signature: Signature,
    loaded: AudienceBitmaps,
}

impl PartialEq for Audience {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.loaded, &other.loaded)
    }
}
impl Eq for Audience {}
impl Hash for Audience {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "audience".hash(state);
    }
}

impl ScalarUDFImpl for Audience {
    fn name(&self) -> &str {
        crate::compile::AUDIENCE_FUNCTION
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))) => name.clone(),
            _ => return exec_err!("audience() takes a pack name as a string literal"),
        };
        let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        match loaded.get(&name) {
            Some(bitmap) => Ok(ColumnarValue::Scalar(ScalarValue::Binary(Some(to_bytes(
                bitmap,
            ))))),
            None => exec_err!("unknown audience '{name}'"),
        }
    }
}

/// `rb_build(user_id)`: the bitmap of a group's ids.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BuildBitmap {
    signature: Signature,
}

impl BuildBitmap {
    fn new() -> Self {
        BuildBitmap {
            signature: Signature::uniform(1, user_id_types(), Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for BuildBitmap {
    fn name(&self) -> &str {
        "rb_build"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(BitmapAccumulator::default()))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[bitmap]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

#[derive(Debug, Default)]
struct BitmapAccumulator {
    bitmap: RoaringBitmap,
}

impl Accumulator for BitmapAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let ids = arrow::compute::cast(&values[0], &DataType::Int64)?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("ids".into()))?;
        for id in ids.iter().flatten() {
            self.bitmap.insert(member(id)?);
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(to_bytes(&self.bitmap))))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.bitmap.serialized_size()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(partials) = states[0].as_binary_opt::<i32>() else {
            return exec_err!("rb_build state is not binary");
        };
        for partial in partials.iter().flatten() {
            self.bitmap |= from_bytes(partial)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberships_agree_with_the_bitmap_on_both_paths() {
        let ids = Int64Array::from(vec![
            Some(0),
            Some(5),
            None,
            Some(6),
            Some(-1),
            Some(63),
            Some(64),
            Some(1_000_000),
            Some(1_000_001),
            Some(i64::from(u32::MAX) + 1),
            Some(i64::MIN),
        ]);
        // Answers worked out by hand from the members below.
        let expected = vec![
            Some(true),
            Some(true),
            None,
            Some(false),
            Some(false),
            Some(true),
            Some(false),
            Some(true),
            Some(false),
            Some(false),
            Some(false),
        ];
        let small = Arc::new(RoaringBitmap::from_iter([0u32, 5, 63, 1_000_000]));
        let cache = FlatCache::default();
        let flat = cache.get(&small).expect("ids below 2^27 have a flat set");
        assert_eq!(flat.len(), 1_000_000 / 64 + 1);
        assert!(Arc::ptr_eq(&flat, &cache.get(&small).expect("cached")));
        let answer = memberships(&ids, &small, Some(flat.as_slice()));
        assert_eq!(answer.iter().collect::<Vec<_>>(), expected);
        assert_eq!(
            memberships(&ids, &small, None).iter().collect::<Vec<_>>(),
            expected
        );

        // A member at 2^27 or above: tested on the roaring bitmap itself.
        let mut large = (*small).clone();
        large.insert(FLAT_IDS);
        let large = Arc::new(large);
        assert!(cache.get(&large).is_none());
        let wide = Int64Array::from(vec![Some(i64::from(FLAT_IDS)), Some(5), Some(6)]);
        assert_eq!(
            memberships(&wide, &large, None).iter().collect::<Vec<_>>(),
            vec![Some(true), Some(true), Some(false)]
        );
        assert!(cache.get(&Arc::new(RoaringBitmap::new())).is_none());
    }
}
