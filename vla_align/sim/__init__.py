"""PyBullet world: Panda + IK controller, scenes, task families, scripted experts."""
