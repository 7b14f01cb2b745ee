"""Governance: Cedar policies that say what may be deployed, imported, downloaded, fine-tuned and
subscribed to, by whom and where, in force from the request after they are saved.

    schema.cedarschema   the entities, attributes and actions policies are written against
    compiler.py          checks a policy document (Cedar syntax, forbid only, @id, schema)
    facts.py             the caller, a model, a deployment as Cedar entities
    engine.py            the snapshot in force, the decision, enforcement and its audit
    service.py           list, show, save, delete, test, compliance (role checks)
    enforcement.py       compliance --enforce: suspend violating deployments, resume compliant ones

A service that performs a governed action calls, before it writes anything,

    self.policies.enforce(actor, "subscribe", ModelFacts.seen_by(model, actor))

(`self.policies` is the server's one `PolicyEngine`, `svc.policies.engine` on the services
container). It returns the decision, audits a deny or an audited match with policy ids only, and
raises `PolicyDenied` (403 naming the policies) when a policy forbids the action.
"""
