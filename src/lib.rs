//! pond: a filesystem you mount like any directory, kept in a Delta Lake table.
mod aligned_buf;
pub mod audit;
pub mod config;
pub mod control;
pub mod fs;
pub mod fuse;
pub mod large_files;
pub mod layout;
pub mod oplog;
pub mod os_error;
pub mod parquet_bounds;
pub mod private_fs;
pub mod remote_mount;
pub mod replica;
mod store_delegate;
