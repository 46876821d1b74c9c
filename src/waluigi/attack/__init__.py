"""The searched attacker: ``waluigi attack`` (:mod:`waluigi.attack.search`), its space
(:mod:`waluigi.attack.space`) and the reading of its trials (:mod:`waluigi.attack.analyze`)."""
