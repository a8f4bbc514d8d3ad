//! mux (being written).
