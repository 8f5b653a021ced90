from envs.web.sites.bundled_tasks import write_all

write_all()
