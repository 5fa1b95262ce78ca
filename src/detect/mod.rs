//! TODO(core): detection backends (DNN default, Haar).
