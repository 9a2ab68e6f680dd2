//! Helpers shared by the scenario tests: processes and hygiene ([`proc`]), clients and
//! load ([`client`]), a FUSE file system that keeps `FLUSH` waiting ([`fuse`]), and the cluster server the scenarios drive ([`server`]).
#![allow(dead_code)]

pub mod check;
pub mod client;
pub mod fuse;
pub mod proc;
pub mod server;
