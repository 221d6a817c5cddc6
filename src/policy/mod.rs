//! Local policies: the expression language, roles and masks.
