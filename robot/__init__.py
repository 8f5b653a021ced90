"""Robots and cameras behind LeRobot-style interfaces (``interfaces``; the simulated driver ``sim``;
hardware drivers in ``hardware``), safety clipping (``safety``), episode recording (``recording``,
``episode_recorder``), the policy server and client (``policy_server``, ``policy_client``, over the
``wire`` msgpack codec and the ``policy_protocol``) and the control daemon (``daemon``)."""
