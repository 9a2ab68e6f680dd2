//! Helpers shared by the scenario tests: processes and hygiene ([`proc`]), clients and
//! load ([`client`]), and the cluster server the scenarios drive ([`server`]).
#![allow(dead_code)]

pub mod check;
pub mod client;
pub mod proc;
pub mod server;
