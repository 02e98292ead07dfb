//! The typed model wrappers share one definition: a config plus the [`super::Network`] built from it,
//! dereferencing to the network and implementing `ModuleT`.

/// Defines `$name`: a model built from a `$config`, dereferencing to [`super::Network`].
macro_rules! model_wrapper {
    ($(#[$doc:meta])* $name:ident, $config:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            config: $config,
            net: $crate::models::Network,
        }

        impl $name {
            /// Builds the network of `config`, taking tensors from `vb`.
            pub fn new(config: &$config, vb: candle_nn::VarBuilder) -> $crate::Result<Self> {
                let net = $crate::models::Network::new(&config.resolve()?, vb)?;
                Ok(Self {
                    config: config.clone(),
                    net,
                })
            }

            /// The config it was built from.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// The shared network.
            pub fn into_network(self) -> $crate::models::Network {
                self.net
            }
        }

        impl std::ops::Deref for $name {
            type Target = $crate::models::Network;
            fn deref(&self) -> &$crate::models::Network {
                &self.net
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut $crate::models::Network {
                &mut self.net
            }
        }

        impl candle_nn::ModuleT for $name {
            fn forward_t(
                &self,
                x: &candle_core::Tensor,
                train: bool,
            ) -> candle_core::Result<candle_core::Tensor> {
                self.net.forward_t(x, train).map_err(Into::into)
            }
        }
    };
}
pub(crate) use model_wrapper;
