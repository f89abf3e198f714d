//! Network namespaces for tests: the labs' own (`xlate_lab::netns`), under
//! the names the tests have always used.

pub use xlate_lab::netns::{try_veth, veth, Bg, Naming, Netns};
