"""Fakes of outside services that branchline talks to, run as real servers (tests and
`branchline demo`)."""
