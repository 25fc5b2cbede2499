//! ieum-federation: the transport layer between homeservers.
