//! The fill rules (SPEC §4, §6): which empty cell gets which value.
