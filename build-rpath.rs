//! Shared build script: gives every binary, test and example an rpath to libtorch's lib dir, so
//! that nobody needs LD_LIBRARY_PATH. LIBTORCH is pinned in .cargo/config.toml.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
