"""The gateway: one OpenAI endpoint for every GemmaDeployment, routed by the request's `model`.

routes (GemmaDeployments and server pods -> the routing table), balancer (which replica), keys (which
caller may use which model), errors (OpenAI-shaped answers a user can act on), proxy (the data path) and
watch (the cluster view that feeds the table) each do one job; docs/gateway.md says why it is built so.
"""
