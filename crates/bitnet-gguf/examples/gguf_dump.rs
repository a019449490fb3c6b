//! Prints a GGUF file's metadata and tensor table: `cargo run -p bitnet-gguf --example gguf_dump FILE`.

use bitnet_gguf::{GgufFile, MetadataValue};

fn show(v: &MetadataValue) -> String {
    match v {
        MetadataValue::Array { elem, items } => {
            let head: Vec<String> = items.iter().take(5).map(show).collect();
            let more = if items.len() > 5 { ", ..." } else { "" };
            format!("[{elem}; {}] [{}{more}]", items.len(), head.join(", "))
        }
        MetadataValue::String(s) if s.chars().count() > 80 => {
            format!("{:?}...", s.chars().take(80).collect::<String>())
        }
        other => format!("{other:?}"),
    }
}

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: gguf_dump FILE");
        std::process::exit(2);
    };
    let file = match GgufFile::open(path.as_ref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("{file:?}");
    for (k, v) in file.metadata() {
        println!("kv {k} = {}", show(v));
    }
    for t in file.tensors() {
        println!(
            "tensor {:<32} {:>6} {:?} offset {} bytes {}",
            t.name,
            t.ty.name(),
            t.dims,
            t.offset,
            t.n_bytes
        );
    }
}
