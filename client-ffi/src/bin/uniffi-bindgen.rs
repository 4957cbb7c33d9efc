//! The UniFFI generator, built from the same uniffi version as the library, so the generated
//! Kotlin, Swift and Python always match the scaffolding in `libtern_ffi`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
