//! ieum-appservices: the application-service model and the bridges.
