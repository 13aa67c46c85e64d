pub mod convert;
pub mod errors;
pub mod services;
pub use services::{router, HeaderInfo, Services};
