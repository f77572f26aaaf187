// Log Analytics workspace + workspace-based Application Insights with local (instrumentation key) auth
// disabled: telemetry is accepted only with a Microsoft Entra token, which the app gets with its identity
// (APPLICATIONINSIGHTS_AUTHENTICATION_STRING) and the Monitoring Metrics Publisher role (rbac.bicep).

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Azure region.')
param location string

@description('Tags applied to both resources.')
param tags object = {}

@description('Days Log Analytics keeps data (30 is the free retention).')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

@description('Daily ingestion cap in GB for the workspace; -1 means no cap.')
param dailyQuotaGb int = -1

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    workspaceCapping: {
      dailyQuotaGb: dailyQuotaGb
    }
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
    IngestionMode: 'LogAnalytics'
  }
}

@description('Application Insights connection string (not a secret once local auth is disabled: it only routes telemetry).')
output connectionString string = appInsights.properties.ConnectionString

@description('Name of the Application Insights component, the scope of Monitoring Metrics Publisher.')
output applicationInsightsName string = appInsights.name

@description('Resource id of the Application Insights component (the workbook\'s data source).')
output applicationInsightsId string = appInsights.id

@description('Resource id of the Log Analytics workspace.')
output logAnalyticsId string = workspace.id
