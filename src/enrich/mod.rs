//! The fill rules (SPEC §4, §6): which empty cell gets which value.

pub mod rdns;
pub mod sinkholes;
pub mod watchlists;
