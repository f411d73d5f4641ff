"""Admission: budgets and RPM/TPM/parallel limits decided together, in-process or in Redis."""
