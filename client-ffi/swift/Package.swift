// swift-tools-version:5.9
//
// The Swift package of the Tern client: the UniFFI bindings of the Rust core (tern-ffi).
//
// Sources/Tern/Tern.swift and Headers/ are generated from the built library and checked in;
// .ci/ffi.sh regenerates them and fails when they differ. TernFFI.xcframework (libtern_ffi for
// each Apple platform, with Headers/) is built by the recipe in README.md and is not checked in.
// This package has not been compiled on the machines this repository is built and tested on,
// which have no Swift toolchain.
import PackageDescription

let package = Package(
    name: "Tern",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Tern", targets: ["Tern"]),
    ],
    targets: [
        .binaryTarget(name: "TernFFI", path: "TernFFI.xcframework"),
        .target(name: "Tern", dependencies: ["TernFFI"], path: "Sources/Tern"),
    ]
)
