use thiserror::Error;

#[derive(Debug, Error)]
pub enum CudaError {
    /// No usable CUDA driver or NVRTC library on this machine (or a GPU index that does not
    /// exist): the message says which, for `--device cuda` to report as it is.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("NVRTC could not compile {kernel}: {log}")]
    Compile { kernel: &'static str, log: String },
    #[error("{0}")]
    Shape(String),
    /// A model or setting the GPU kernels do not handle (the message names it).
    #[error("not supported on the GPU: {0}")]
    Unsupported(String),
    #[error("CUDA kernel cache {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CudaError>;
