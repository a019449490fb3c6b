//! Run-time kernel compilation: NVRTC turns the CUDA C++ in `kernels/` into PTX for the GPU
//! found (its compute capability), the driver loads it. PTX is cached on disk, keyed by a
//! hash of the source, the target and the NVRTC version, so only the first run on a machine
//! pays the compile; a cache that cannot be written costs time, never correctness.

use crate::error::{CudaError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A kernel source file compiled as one module.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Source {
    pub name: &'static str,
    pub code: &'static str,
}

pub(crate) const TERNARY: Source = Source {
    name: "ternary.cu",
    // The shared prelude first (NVRTC gets no include path): error lines count from it.
    code: concat!(
        include_str!("../kernels/common.cuh"),
        include_str!("../kernels/ternary.cu")
    ),
};

pub(crate) const FORWARD: Source = Source {
    name: "forward.cu",
    code: concat!(
        include_str!("../kernels/common.cuh"),
        include_str!("../kernels/forward.cu")
    ),
};

pub(crate) struct KernelCache {
    ctx: Arc<CudaContext>,
    arch: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Looked up once: `cuModuleGetFunction` per launch would cost more than a small kernel.
    functions: Mutex<HashMap<String, CudaFunction>>,
}

/// FNV-1a: a stable hash for cache file names (std's hasher may change between releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BITNET_CUDA_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("bitnet").join("cuda"))
}

fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters; the library was checked present by Gpu::open.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (major, minor)
}

/// NVRTC options for a virtual architecture (`compute_90`). -default-device: plain functions
/// are device functions. No fast math: the float epilogues must round like the CPU's.
fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "-default-device".into(),
    ]
}

impl KernelCache {
    pub fn new(ctx: Arc<CudaContext>, (major, minor): (i32, i32)) -> Self {
        KernelCache {
            ctx,
            arch: format!("compute_{major}{minor}"),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// `name` from `src`, compiling (or reading the cached PTX of) the module on first use.
    pub fn function(&self, src: Source, name: &str) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = functions.get(name) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(src.name) {
                Some(m) => m.clone(),
                None => {
                    let m = self.ctx.load_module(self.ptx(src)?)?;
                    modules.insert(src.name, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(name)?;
        functions.insert(name.to_string(), f.clone());
        Ok(f)
    }

    fn options(&self) -> Vec<String> {
        options(&self.arch)
    }

    fn ptx(&self, src: Source) -> Result<Ptx> {
        let options = self.options();
        let (vmaj, vmin) = nvrtc_version();
        let key = fnv1a(&[
            src.code.as_bytes(),
            options.join(" ").as_bytes(),
            &vmaj.to_le_bytes(),
            &vmin.to_le_bytes(),
        ]);
        let path =
            cache_dir().map(|d| d.join(format!("{}-{}-{key:016x}.ptx", src.name, self.arch)));
        if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            return Ok(Ptx::from_src(text));
        }
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(
            src.code,
            CompileOptions {
                options,
                name: Some(src.name.into()),
                ..Default::default()
            },
        )
        .map_err(|e| CudaError::Compile {
            kernel: src.name,
            log: match e {
                CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
                other => other.to_string(),
            },
        })?;
        if let Some(path) = path {
            // Best effort, through a temporary name so a concurrent reader never sees half a file.
            let write = || -> std::io::Result<()> {
                let dir = path.parent().unwrap_or(&path);
                std::fs::create_dir_all(dir)?;
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, ptx.to_src())?;
                std::fs::rename(&tmp, &path)
            };
            if let Err(e) = write() {
                eprintln!(
                    "warning: {}",
                    CudaError::Cache {
                        path: path.clone(),
                        source: e
                    }
                );
            }
        }
        Ok(ptx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel file compiles with NVRTC for the GPU generations the kernels target
    /// (Ampere and Hopper), without a GPU, and has every kernel the backend looks up when it
    /// loads: the kernels are compiled at run time, so a kernel that does not compile (or a
    /// name that is not there) would otherwise first fail on a user's GPU. CI unpacks NVRTC from
    /// PyPI (`scripts/setup-nvrtc.sh`) and sets `BITNET_REQUIRE_NVRTC=1`: there, a missing
    /// library fails this test instead of skipping it.
    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: only tries to dlopen the candidate library names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("BITNET_REQUIRE_NVRTC").is_none(),
                "BITNET_REQUIRE_NVRTC is set but no libnvrtc could be loaded (LD_LIBRARY_PATH)"
            );
            eprintln!("no libnvrtc on this machine: kernel compilation not checked");
            return;
        }
        let looked_up = [
            (TERNARY, &crate::backend::TERNARY_KERNELS[..]),
            (FORWARD, &crate::backend::FORWARD_KERNELS[..]),
        ];
        for arch in ["compute_80", "compute_90"] {
            for (src, names) in looked_up {
                let ptx = cudarc::nvrtc::compile_ptx_with_opts(
                    src.code,
                    CompileOptions {
                        options: options(arch),
                        name: Some(src.name.into()),
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| match e {
                    CompileError::CompileError { log, .. } => {
                        panic!("{} for {arch}:\n{}", src.name, log.to_string_lossy())
                    }
                    other => panic!("{} for {arch}: {other}", src.name),
                });
                let ptx = ptx.to_src();
                for name in names {
                    assert!(
                        ptx.contains(&format!(".entry {name}(")),
                        "{} for {arch}: no kernel {name}",
                        src.name
                    );
                }
            }
        }
    }
}
