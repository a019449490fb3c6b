//! Handles: what C holds instead of pointers.
//!
//! A handle is an id from a process-wide counter, dressed as an opaque pointer, never an
//! address, and the library never dereferences it. Every call looks it up in a table of live
//! objects first, so a NULL, freed, garbage or wrong-kind handle is an error instead of a
//! read of freed memory (which also keeps valgrind quiet in the bad-input tests). Ids are
//! never reused within a process, so a stale handle cannot alias a newer object either.
//!
//! What cannot be detected: a garbage value that happens to equal a live handle's id (ids
//! start at an unusual base to make that unlikely), and a handle forged by copying a live
//! one, which is simply that object.
//!
//! Objects are reference-counted: a call in flight keeps its object alive even if another
//! thread (or the call's own callback) frees the handle meanwhile, and sessions keep their
//! model's weights alive after the model handle is freed.

use crate::status::{bitnet_status, Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock, TryLockError};

/// Far from small integers and typical heap addresses on 64-bit targets.
const ID_BASE: usize = if usize::BITS >= 64 {
    0x0B17_0000_0000_0000_u64 as usize
} else {
    0x0B17_0000
};
/// Ids are multiples of 16, so a pointer to a byte inside an object cannot match one.
const ID_STEP: usize = 16;

static NEXT: AtomicUsize = AtomicUsize::new(ID_BASE);
static LIVE: LazyLock<RwLock<HashMap<usize, Object>>> = LazyLock::new(Default::default);

/// A live object and its kind.
#[derive(Clone)]
pub enum Object {
    Model(Arc<crate::model::Model>),
    Session(Arc<Mutex<crate::session::SessionState>>),
    Sampler(Arc<Mutex<crate::sampler::SamplerState>>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Model(_) => "a model",
            Object::Session(_) => "a session",
            Object::Sampler(_) => "a sampler",
        }
    }
}

/// Registers `obj` and returns its handle.
pub fn insert<T>(obj: Object) -> *mut T {
    let id = NEXT.fetch_add(ID_STEP, Ordering::Relaxed);
    write_table().insert(id, obj);
    id as *mut T
}

/// The live object behind `handle`, checked to be of the kind `want` names.
pub fn get<T>(handle: *const T, want: &str) -> Result<Object> {
    if handle.is_null() {
        return Err(Error::null(want));
    }
    let id = handle as usize;
    let obj = read_table()
        .get(&id)
        .cloned()
        .ok_or_else(|| not_live(want, id))?;
    Ok(obj)
}

/// Unregisters `handle`; the object goes once no call in flight holds it.
pub fn remove<T>(handle: *const T, want: &str, is_kind: fn(&Object) -> bool) -> Result<()> {
    let id = handle as usize;
    let mut table = write_table();
    match table.get(&id) {
        Some(obj) if is_kind(obj) => {
            // Dropped after the table's lock is released: dropping a model joins its worker
            // threads, which should not stall every other call.
            let obj = table.remove(&id);
            drop(table);
            drop(obj);
            Ok(())
        }
        Some(obj) => Err(wrong_kind(want, obj)),
        None => Err(not_live(want, id)),
    }
}

pub fn wrong_kind(want: &str, got: &Object) -> Error {
    Error::new(
        bitnet_status::BITNET_ERR_INVALID_HANDLE,
        format!("{want} handle is {}, not the expected kind", got.kind()),
    )
}

fn not_live(want: &str, id: usize) -> Error {
    Error::new(
        bitnet_status::BITNET_ERR_INVALID_HANDLE,
        format!("{want} handle {id:#x} is not a live object (already freed, or never returned by bitnet)"),
    )
}

/// Takes an object's lock for one call. A second call while one runs (another thread, or the
/// object's own callback) is refused rather than blocked: blocking would deadlock the
/// callback case, and sessions are meant to be driven by one thread at a time.
pub fn lock<'a, S>(m: &'a Mutex<S>, what: &str) -> Result<MutexGuard<'a, S>> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(Error::new(
            bitnet_status::BITNET_ERR_BUSY,
            format!("{what} is in use by another call (another thread, or its own callback)"),
        )),
        Err(TryLockError::Poisoned(_)) => Err(Error::new(
            bitnet_status::BITNET_ERR_INTERNAL,
            format!("{what} is unusable after an internal error; free it"),
        )),
    }
}

// The table is only changed by whole inserts and removes, so a panic elsewhere while holding
// its lock cannot leave it half-updated: a poisoned lock is still safe to use.
fn read_table() -> std::sync::RwLockReadGuard<'static, HashMap<usize, Object>> {
    LIVE.read().unwrap_or_else(|e| e.into_inner())
}

fn write_table() -> std::sync::RwLockWriteGuard<'static, HashMap<usize, Object>> {
    LIVE.write().unwrap_or_else(|e| e.into_inner())
}
