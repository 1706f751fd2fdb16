"""``fanline cluster``: operating a Fanline deployment on Kubernetes.

- :mod:`.plan`: which pods shed how many connections to rebalance (pure);
- :mod:`.restart`: when a step of a one-at-a-time restart is done (pure);
- :mod:`.preflight`: what a set of chart values needs from the cluster (pure);
- :mod:`.kube`: the few Kubernetes API calls, through the official client;
- :mod:`.commands`: the commands, printing what they see and do;
- :mod:`.cli`: the argument parser, wired into ``fanline`` by node.cli.

Only :mod:`.kube` imports ``kubernetes`` (the optional ``fanline[kubernetes]``
extra); everything else imports without it.
"""
