"""What more than one test module uses: models, images, indexes, servers, CLI runs and
paths. Test modules import from here, never from one another (docs/architecture.md, where
the tests live)."""
