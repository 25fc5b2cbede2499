//! `App`: the shared state handed to every handler (config and services); no globals.

use std::{ops::Deref, sync::Arc};

use crate::service::Services;

#[derive(Clone)]
pub struct App(Arc<Services>);

impl App {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl Deref for App {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}
