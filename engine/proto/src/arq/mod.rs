//! arq (being written).
