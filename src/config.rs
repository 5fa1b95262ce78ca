//! TODO(core): see issue 4.
