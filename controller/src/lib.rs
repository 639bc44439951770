//! The Weft controller. For now: the mesh certificate authority.

pub mod ca;
