//! Link every guest as a bare-metal image: no C runtime, static, at 0x10000.
//! For x86_64-unknown-none the linker is rust-lld, which takes ld's flags;
//! for the host target it is the C compiler driver.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = format!("{dir}/link.ld");
    let bare_metal = std::env::var("TARGET").is_ok_and(|target| target == "x86_64-unknown-none");
    let args: Vec<String> = if bare_metal {
        ["-static", "--no-pie", "--build-id=none", "-T", &script].map(String::from).to_vec()
    } else {
        ["-nostartfiles", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", &format!("-Wl,-T,{script}")]
            .map(String::from)
            .to_vec()
    };
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=link.ld");
}
