"""The payers above the key: users, teams and their members, organizations, end users
(customers) and named budgets; the admin logic behind /user, /team, /organization, /customer
and /budget (issue 14)."""
