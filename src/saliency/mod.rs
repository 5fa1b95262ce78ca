//! TODO(saliency): see issue 5.
