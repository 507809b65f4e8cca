"""Device profiles (the YAMLs in the top-level devices/) and the deployment cost model priced from them."""
