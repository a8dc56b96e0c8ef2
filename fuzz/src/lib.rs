//! picamd's stream parsers, compiled from picamd's own source files: the parsers need only
//! `bytes` and `thiserror`, so fuzzing does not build (and instrument) picamd's camera, HTTP
//! and libjpeg-turbo dependencies. The modules keep their places relative to each other
//! (`multipart` reaches `jpeg` as `super::jpeg`), so both sit at the crate root here.

#[path = "../../src/source/jpeg.rs"]
pub mod jpeg;
#[path = "../../src/source/multipart.rs"]
pub mod multipart;
