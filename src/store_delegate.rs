//! [`delegate_object_store!`]: the `ObjectStore` methods a wrapping store hands unchanged to the
//! store it wraps, written once. `ObjectStore` is declared with `#[async_trait]`; pond does not
//! depend on async-trait, so each method is written as that macro expands it. A wrapper implements
//! the methods it changes itself and lists the rest:
//!
//! ```ignore
//! impl ObjectStore for Wrapper {
//!     fn get_opts<...>(...) -> ... { /* its own */ }
//!     delegate_object_store!(inner: put_opts, put_multipart_opts, delete_stream, list, copy_opts);
//! }
//! ```

/// The boxed future of an `#[async_trait]` method of `ObjectStore`.
pub(crate) type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = object_store::Result<T>> + Send + 'a>>;

/// Methods of `ObjectStore` that call the same method of `self.$field` (see the module doc).
macro_rules! delegate_object_store {
    ($field:ident: $($method:ident),+ $(,)?) => {
        $( $crate::store_delegate::delegate_object_store!(@one $field $method); )+
    };
    (@one $f:ident put_opts) => {
        fn put_opts<'life0, 'life1, 'async_trait>(
            &'life0 self,
            location: &'life1 object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> $crate::store_delegate::StoreFuture<'async_trait, object_store::PutResult>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.$f.put_opts(location, payload, opts)
        }
    };
    (@one $f:ident put_multipart_opts) => {
        fn put_multipart_opts<'life0, 'life1, 'async_trait>(
            &'life0 self,
            location: &'life1 object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> $crate::store_delegate::StoreFuture<'async_trait, Box<dyn object_store::MultipartUpload>>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.$f.put_multipart_opts(location, opts)
        }
    };
    (@one $f:ident delete_stream) => {
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
            self.$f.delete_stream(locations)
        }
    };
    (@one $f:ident list) => {
        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.$f.list(prefix)
        }
    };
    (@one $f:ident list_with_offset) => {
        fn list_with_offset(
            &self,
            prefix: Option<&object_store::path::Path>,
            offset: &object_store::path::Path,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.$f.list_with_offset(prefix, offset)
        }
    };
    (@one $f:ident list_with_delimiter) => {
        fn list_with_delimiter<'life0, 'life1, 'async_trait>(
            &'life0 self,
            prefix: Option<&'life1 object_store::path::Path>,
        ) -> $crate::store_delegate::StoreFuture<'async_trait, object_store::ListResult>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            self.$f.list_with_delimiter(prefix)
        }
    };
    (@one $f:ident copy_opts) => {
        fn copy_opts<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            from: &'life1 object_store::path::Path,
            to: &'life2 object_store::path::Path,
            options: object_store::CopyOptions,
        ) -> $crate::store_delegate::StoreFuture<'async_trait, ()>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            self.$f.copy_opts(from, to, options)
        }
    };
    (@one $f:ident rename_opts) => {
        fn rename_opts<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            from: &'life1 object_store::path::Path,
            to: &'life2 object_store::path::Path,
            options: object_store::RenameOptions,
        ) -> $crate::store_delegate::StoreFuture<'async_trait, ()>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            self.$f.rename_opts(from, to, options)
        }
    };
}

pub(crate) use delegate_object_store;
