"""placeholder"""
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer


@register_trainer("meds")
class MEDSTrainer(PPOTrainerSync):
    pass


def meds_config_from_trainer_config(config):
    from omegaconf import OmegaConf

    from verl_meds.config import MEDSConfig

    return MEDSConfig.from_dict(OmegaConf.to_container(config.meds, resolve=True))
