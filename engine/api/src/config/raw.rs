//! TEMPORARY stand-in until the config parser lands.
