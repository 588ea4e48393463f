terraform {
  # Cross-variable references in validation blocks need 1.9.
  required_version = ">= 1.9"
}
